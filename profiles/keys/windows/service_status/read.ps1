# Prints the running state of the service $env:RMM_PARAM_NAME. Exit 3: no such service.
$ErrorActionPreference = 'Stop'
if (-not $env:RMM_PARAM_NAME) { [Console]::Error.WriteLine('name is required'); exit 2 }
$service = Get-Service -Name $env:RMM_PARAM_NAME -ErrorAction SilentlyContinue
if ($null -eq $service) { exit 3 }
[Console]::Out.Write("$($service.Status)`n")
exit 0
