# Starts (Running) or stops (Stopped) the service $env:RMM_PARAM_NAME as $env:RMM_DESIRED_VALUE
# says; its start type is windows.service_start_type's. Only `equals` names a state to set: other
# comparisons, and services to remove (`absent`), are refused (2). Exit 0 proves nothing: the
# server re-reads.
$ErrorActionPreference = 'Stop'
if (-not $env:RMM_PARAM_NAME) { [Console]::Error.WriteLine('name is required'); exit 2 }
if ($env:RMM_COMPARISON -ne 'equals') { [Console]::Error.WriteLine("can set a state for equals only, not $($env:RMM_COMPARISON)"); exit 2 }
if ('Running', 'Stopped' -notcontains $env:RMM_DESIRED_VALUE) { [Console]::Error.WriteLine('the desired value must be Running or Stopped'); exit 2 }
$service = Get-Service -Name $env:RMM_PARAM_NAME -ErrorAction SilentlyContinue
if ($null -eq $service) { [Console]::Error.WriteLine('no such service'); exit 3 }
if ($env:RMM_DESIRED_VALUE -eq 'Running') { Start-Service -Name $env:RMM_PARAM_NAME }
else { Stop-Service -Name $env:RMM_PARAM_NAME -Force }
exit 0
