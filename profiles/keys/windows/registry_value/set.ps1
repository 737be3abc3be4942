# Writes $env:RMM_DESIRED_VALUE as the registry value $env:RMM_PARAM_NAME under $env:RMM_PARAM_PATH
# (creating the key), typed $env:RMM_PARAM_TYPE (String by default); RMM_COMPARISON `absent`
# removes the value. Exit 0 proves nothing: the server re-reads.
$ErrorActionPreference = 'Stop'
if (-not $env:RMM_PARAM_PATH -or -not $env:RMM_PARAM_NAME) { [Console]::Error.WriteLine('path and name are required'); exit 2 }
if ($env:RMM_COMPARISON -eq 'absent') {
  if (Test-Path -LiteralPath $env:RMM_PARAM_PATH) {
    Remove-ItemProperty -LiteralPath $env:RMM_PARAM_PATH -Name $env:RMM_PARAM_NAME -ErrorAction SilentlyContinue
  }
  exit 0
}
$type = if ($env:RMM_PARAM_TYPE) { $env:RMM_PARAM_TYPE } else { 'String' }
if ('String', 'ExpandString', 'DWord', 'QWord', 'MultiString' -notcontains $type) { [Console]::Error.WriteLine("unknown type $type"); exit 2 }
$value = switch ($type) {
  'DWord' { [int]$env:RMM_DESIRED_VALUE }
  'QWord' { [long]$env:RMM_DESIRED_VALUE }
  'MultiString' { [string[]]($env:RMM_DESIRED_VALUE -split ';') }
  default { $env:RMM_DESIRED_VALUE }
}
if (-not (Test-Path -LiteralPath $env:RMM_PARAM_PATH)) { New-Item -Path $env:RMM_PARAM_PATH -Force | Out-Null }
New-ItemProperty -LiteralPath $env:RMM_PARAM_PATH -Name $env:RMM_PARAM_NAME -Value $value -PropertyType $type -Force | Out-Null
exit 0
