# Sets $env:RMM_PARAM_SETTING in section [$env:RMM_PARAM_SECTION] of the local security policy
# to $env:RMM_DESIRED_VALUE with `secedit /configure` over a template of that one line. Exit 0
# proves nothing: the server re-reads. `absent` is refused (2): secedit cannot undefine a setting.
$ErrorActionPreference = 'Stop'
$sections = 'System Access', 'Event Audit', 'Registry Values', 'Privilege Rights'
if ($sections -notcontains $env:RMM_PARAM_SECTION -or -not $env:RMM_PARAM_SETTING) { [Console]::Error.WriteLine('a bad section or setting'); exit 2 }
if ($env:RMM_COMPARISON -eq 'absent') { [Console]::Error.WriteLine('secedit cannot remove a setting'); exit 2 }
if ($env:RMM_DESIRED_VALUE -match '[\r\n]') { [Console]::Error.WriteLine('the value is one line'); exit 2 }
$areas = if ($env:RMM_PARAM_SECTION -eq 'Privilege Rights') { 'USER_RIGHTS' } else { 'SECURITYPOLICY' }
$base = Join-Path ([IO.Path]::GetTempPath()) ('rmm-secedit-' + [guid]::NewGuid().ToString('N'))
$template = @(
  '[Unicode]', 'Unicode=yes', '[Version]', 'signature="$CHICAGO$"', 'Revision=1',
  "[$($env:RMM_PARAM_SECTION)]", "$($env:RMM_PARAM_SETTING) = $($env:RMM_DESIRED_VALUE)"
)
try {
  [IO.File]::WriteAllLines("$base.inf", $template, [Text.Encoding]::Unicode)
  $log = & secedit.exe /configure /db "$base.sdb" /cfg "$base.inf" /areas $areas /quiet 2>&1
  if ($LASTEXITCODE -ne 0) { [Console]::Error.WriteLine("secedit /configure failed: $log"); exit 4 }
  exit 0
} finally {
  Remove-Item -LiteralPath "$base.inf", "$base.sdb", "$base.jfm" -Force -ErrorAction SilentlyContinue
}
