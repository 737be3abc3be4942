# Sets the start type of the service $env:RMM_PARAM_NAME to $env:RMM_DESIRED_VALUE (Automatic,
# Manual, Disabled); Disabled also stops it. Services are not removed: `absent` is refused (2).
$ErrorActionPreference = 'Stop'
if (-not $env:RMM_PARAM_NAME) { [Console]::Error.WriteLine('name is required'); exit 2 }
if ('Automatic', 'Manual', 'Disabled' -notcontains $env:RMM_DESIRED_VALUE) { [Console]::Error.WriteLine('the desired value must be Automatic, Manual or Disabled'); exit 2 }
$service = Get-Service -Name $env:RMM_PARAM_NAME -ErrorAction SilentlyContinue
if ($null -eq $service) { [Console]::Error.WriteLine('no such service'); exit 3 }
Set-Service -Name $env:RMM_PARAM_NAME -StartupType $env:RMM_DESIRED_VALUE
if ($env:RMM_DESIRED_VALUE -eq 'Disabled' -and $service.Status -ne 'Stopped') { Stop-Service -Name $env:RMM_PARAM_NAME -Force }
exit 0
