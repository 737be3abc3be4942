# Prints the value of $env:RMM_PARAM_SETTING in section [$env:RMM_PARAM_SECTION] of the local
# security policy, exported with secedit (which needs an administrator: the read is privileged).
# Exit 3: the setting is not defined. Exit 2: a bad parameter; 4: secedit failed.
$ErrorActionPreference = 'Stop'
$sections = 'System Access', 'Event Audit', 'Registry Values', 'Privilege Rights'
if ($sections -notcontains $env:RMM_PARAM_SECTION -or -not $env:RMM_PARAM_SETTING) { [Console]::Error.WriteLine('section must be one of: ' + ($sections -join ', ') + '; setting is required'); exit 2 }
$areas = if ($env:RMM_PARAM_SECTION -eq 'Privilege Rights') { 'USER_RIGHTS' } else { 'SECURITYPOLICY' }
$inf = Join-Path ([IO.Path]::GetTempPath()) ('rmm-secedit-' + [guid]::NewGuid().ToString('N') + '.inf')
try {
  $log = & secedit.exe /export /cfg $inf /areas $areas /quiet 2>&1
  if ($LASTEXITCODE -ne 0 -or -not (Test-Path -LiteralPath $inf)) { [Console]::Error.WriteLine("secedit /export failed: $log"); exit 4 }
  $current = $null
  foreach ($line in [IO.File]::ReadAllLines($inf)) {  # secedit writes UTF-16 with a BOM; ReadAllLines follows it
    $text = $line.Trim()
    if ($text -match '^\[(.+)\]$') { $current = $Matches[1]; continue }
    if ($current -ne $env:RMM_PARAM_SECTION) { continue }
    $at = $text.IndexOf('=')
    if ($at -lt 1) { continue }
    if ($text.Substring(0, $at).Trim() -eq $env:RMM_PARAM_SETTING) {
      [Console]::Out.Write($text.Substring($at + 1).Trim() + "`n")
      exit 0
    }
  }
  exit 3
} finally {
  Remove-Item -LiteralPath $inf -Force -ErrorAction SilentlyContinue
}
