# Prints the data of the registry value $env:RMM_PARAM_NAME under $env:RMM_PARAM_PATH.
# Exit 3: no such key or value. Exit 2: a bad parameter.
$ErrorActionPreference = 'Stop'
if (-not $env:RMM_PARAM_PATH -or -not $env:RMM_PARAM_NAME) { [Console]::Error.WriteLine('path and name are required'); exit 2 }
$key = Get-Item -LiteralPath $env:RMM_PARAM_PATH -ErrorAction SilentlyContinue
if ($null -eq $key -or $key.GetValueNames() -notcontains $env:RMM_PARAM_NAME) { exit 3 }
# DoNotExpandEnvironmentNames: REG_EXPAND_SZ as written, not as this account expands it
$data = $key.GetValue($env:RMM_PARAM_NAME, $null, 'DoNotExpandEnvironmentNames')
if ($data -is [array]) { $data = ($data | ForEach-Object { "$_" }) -join ';' }
[Console]::Out.Write("$data`n")
exit 0
