"""The "containment" job kind: make one endpoint reach only the RMM server (isolate), or undo
exactly that (release), then read back what is in force (docs/integrations.md#edr-containment).

Steps, in order, each a signed, privileged instruction:

0. the change. Linux: one ``nft -f`` file that declares, deletes and declares again the table
   ``inet rmm_containment`` (so it replaces any earlier copy in one transaction) whose base
   chains drop everything in and out except loopback, new and established TCP to the server's
   addresses and ports and the replies, and DNS only when the agent's server is a name. No other
   table or rule is touched, so release, which deletes only that table (atomically too, and
   without error when it is absent), leaves exactly what was there before. Windows: PowerShell
   that saves the firewall profiles' default actions and the enabled rules, blocks by default,
   disables those rules and adds the group ``RMM containment``'s allow rules; release puts back
   what it saved. It is tested by its rendering; no Windows endpoint runs in the tests.
1. the state read (runs even when the change failed: the server records what is in force), a
   structured document ``{"contained": bool, "table_present": bool, "nft": bool, "expect": ...}``;
   the job fails unless it shows what the action wanted. The read updates the asset's
   ``containment`` and tells the outbox (``containment.changed``).
"""

from __future__ import annotations

import ipaddress
import json

from django.conf import settings

from containment import services
from containment.models import ContainmentAction, ContainmentJob, ContainmentState
from rmm.engine import registry
from rmm.engine.states import JobStatus
from rmm_agent.protocol import CAPABILITY_STRUCTURED_RESULT, RESULT_PATH_ENV

CONTAINMENT_STATE = "containment_state"  # the evidence type of each finished step (apps.py registers it)
TABLE = "inet rmm_containment"
WINDOWS_GROUP = "RMM containment"
# Where the Windows change keeps what it replaced, for release to put back.
WINDOWS_SAVED = r"$env:ProgramData\rmm\containment-saved.json"
EXPECT = {ContainmentAction.ISOLATE: ContainmentState.CONTAINED, ContainmentAction.RELEASE: ContainmentState.RELEASED}


def _family(address: str) -> str:
    return "ip6" if ipaddress.ip_address(address).version == 6 else "ip"


def render_nft(job: ContainmentJob) -> str:
    """The isolate's one nft file: declare, delete, declare with its rules (one transaction)."""
    output, input_ = ['oif "lo" accept'], ['iif "lo" accept']
    for address, port in job.server_endpoints:
        family = _family(address)
        output.append(f"{family} daddr {address} tcp dport {int(port)} ct state new,established accept")
        input_.append(f"{family} saddr {address} tcp sport {int(port)} ct state established accept")
    if job.dns:
        for proto in ("udp", "tcp"):
            output.append(f"{proto} dport 53 accept")
            input_.append(f"{proto} sport 53 ct state established accept")

    def chain(name: str, hook: str, rules: list[str]) -> str:
        body = "".join(f"\t\t{rule}\n" for rule in rules)
        return f"\tchain {name} {{\n\t\ttype filter hook {hook} priority -10; policy drop;\n{body}\t}}\n"

    return (
        f"table {TABLE}\n"
        f"delete table {TABLE}\n"
        f"table {TABLE} {{\n"
        + chain("input", "input", input_)
        + chain("output", "output", output)
        + chain("forward", "forward", [])
        + "}\n"
    )


NEEDS_NFT = 'command -v nft >/dev/null 2>&1 || { echo "nft is not installed (Debian: nftables)" >&2; exit 3; }\n'


def render_linux_change(job: ContainmentJob) -> str:
    if job.action == ContainmentAction.RELEASE:
        # Declaring it first makes the delete succeed when it is already gone: release is idempotent.
        rules = f"table {TABLE}\ndelete table {TABLE}\n"
        said = "released: the containment table is gone; nothing else was touched"
    else:
        rules = render_nft(job)
        reachable = ", ".join(f"{address} port {port}" for address, port in job.server_endpoints)
        said = f"contained: only {reachable}{' and DNS' if job.dns else ''} reachable"
    return (
        "set -eu\n"
        + NEEDS_NFT
        + "rules=$(mktemp)\ntrap 'rm -f \"$rules\"' EXIT\n"
        + f"cat > \"$rules\" <<'RMM_NFT'\n{rules}RMM_NFT\n"
        + 'nft -f "$rules"\n'
        + f"echo {json.dumps(said)}\n"
    )


def render_linux_state(job: ContainmentJob) -> str:
    """The state read: is the table there, and do its input and output chains drop by default."""
    expect = EXPECT[job.action]
    return (
        "set -u\n"
        "nft=false; present=false; dropping=0\n"
        "if command -v nft >/dev/null 2>&1; then\n"
        "  nft=true\n"
        f"  if listing=$(nft list table {TABLE} 2>/dev/null); then\n"
        "    present=true\n"
        "    dropping=$(printf '%s\\n' \"$listing\" | grep -c 'policy drop;' || true)\n"
        "  fi\n"
        "fi\n"
        'contained=false; [ "$present" = true ] && [ "$dropping" -ge 2 ] && contained=true\n'
        f'printf \'{{"contained": %s, "table_present": %s, "nft": %s, "table": "{TABLE}", "expect": "{expect}"}}\' '
        f'"$contained" "$present" "$nft" > "${RESULT_PATH_ENV}"\n'
        'echo "contained=$contained table_present=$present"\n'
    )


def _ps_list(items: list[str]) -> str:
    return "@(" + ", ".join("'" + item.replace("'", "''") + "'" for item in items) + ")"


def render_windows_change(job: ContainmentJob) -> str:
    """Windows Firewall by PowerShell. Block rules beat allow rules there, so isolation blocks by
    default and disables the enabled rules instead (saving both for release)."""
    head = f"$ErrorActionPreference = 'Stop'\n$group = '{WINDOWS_GROUP}'\n$saved = \"{WINDOWS_SAVED}\"\n"
    if job.action == ContainmentAction.RELEASE:
        return (
            head
            + "if (Test-Path -LiteralPath $saved) {\n"
            + "  $before = Get-Content -LiteralPath $saved -Raw | ConvertFrom-Json\n"
            + "  foreach ($p in $before.profiles) {\n"
            + "    Set-NetFirewallProfile -Name $p.Name -DefaultInboundAction $p.DefaultInboundAction "
            + "-DefaultOutboundAction $p.DefaultOutboundAction\n"
            + "  }\n"
            + "  if ($before.rules) { Enable-NetFirewallRule -Name $before.rules }\n"
            + "  Remove-Item -LiteralPath $saved\n"
            + "}\n"
            + "Get-NetFirewallRule -Group $group -ErrorAction SilentlyContinue | Remove-NetFirewallRule\n"
            + "Write-Output 'released: the containment rules are gone; what they replaced is back'\n"
        )
    addresses = _ps_list([address for address, _ in job.server_endpoints])
    ports = _ps_list(sorted({str(port) for _, port in job.server_endpoints}))
    dns = (
        "New-NetFirewallRule -Group $group -DisplayName 'RMM containment: DNS' -Direction Outbound "
        "-Protocol UDP -RemotePort 53 -Action Allow | Out-Null\n"
        if job.dns
        else ""
    )
    return (
        head
        + "if (-not (Test-Path -LiteralPath $saved)) {\n"
        + "  New-Item -ItemType Directory -Force -Path (Split-Path -Parent $saved) | Out-Null\n"
        + "  $profiles = Get-NetFirewallProfile | ForEach-Object { [ordered]@{ Name = $_.Name; "
        + "DefaultInboundAction = [string]$_.DefaultInboundAction; "
        + "DefaultOutboundAction = [string]$_.DefaultOutboundAction } }\n"
        + "  $rules = @(Get-NetFirewallRule -Enabled True | Where-Object { $_.Group -ne $group } | "
        + "ForEach-Object { $_.Name })\n"
        + "  $doc = [ordered]@{ profiles = @($profiles); rules = $rules }\n"
        + "  [System.IO.File]::WriteAllText($saved, ($doc | ConvertTo-Json -Depth 4 -Compress))\n"
        + "  if ($rules) { Disable-NetFirewallRule -Name $rules }\n"
        + "}\n"
        + "Get-NetFirewallRule -Group $group -ErrorAction SilentlyContinue | Remove-NetFirewallRule\n"
        + "New-NetFirewallRule -Group $group -DisplayName 'RMM containment: server' -Direction Outbound "
        + f"-Protocol TCP -RemoteAddress {addresses} -RemotePort {ports} -Action Allow | Out-Null\n"
        + dns
        + "Set-NetFirewallProfile -All -DefaultInboundAction Block -DefaultOutboundAction Block\n"
        + "Write-Output 'contained: only the RMM server is reachable'\n"
    )


def render_windows_state(job: ContainmentJob) -> str:
    expect = EXPECT[job.action]
    return (
        "$ErrorActionPreference = 'Stop'\n"
        f"$present = [bool](Get-NetFirewallRule -Group '{WINDOWS_GROUP}' -ErrorAction SilentlyContinue)\n"
        "$blocking = @(Get-NetFirewallProfile | Where-Object { $_.DefaultOutboundAction -ne 'Block' }).Count -eq 0\n"
        f"$doc = [ordered]@{{ contained = ($present -and $blocking); table_present = $present; nft = $false; "
        f"table = '{WINDOWS_GROUP}'; expect = '{expect}' }}\n"
        "[System.IO.File]::WriteAllText($env:RMM_RESULT_PATH, ($doc | ConvertTo-Json -Compress))\n"
        'Write-Output "contained=$($doc.contained) rules_present=$present"\n'
    )


def windows(job: ContainmentJob) -> bool:
    return job.asset.os.lower().startswith("windows")


def render(job: ContainmentJob) -> list[registry.InstructionSpec]:
    if windows(job):
        interpreter, change, state = "powershell", render_windows_change(job), render_windows_state(job)
    else:
        interpreter, change, state = "sh", render_linux_change(job), render_linux_state(job)
    return [
        # the state read runs whatever the change came to: the server records what is in force
        registry.InstructionSpec(
            asset=job.asset,
            interpreter=interpreter,
            content=change,
            timeout_seconds=120,
            privileged=True,
            on_failure=registry.CONTINUE,
        ),
        registry.InstructionSpec(
            asset=job.asset, interpreter=interpreter, content=state, timeout_seconds=60, privileged=True
        ),
    ]


def judge(inst, result: dict) -> tuple[str, str] | None:
    """The state read decides: an isolate must read contained, a release must read not."""
    document = result.get("structured")
    if not isinstance(document, dict) or "contained" not in document:
        return None
    wanted = document.get("expect") == ContainmentState.CONTAINED
    if document.get("contained") is not wanted:
        said = "not contained" if wanted else "still contained"
        return JobStatus.FAILED, f"state read: {said}"
    return None


def prepare(*, action: str, reason: str, server_endpoints: list, dns: bool) -> registry.NewJob:
    """The service checked the action, the reason and the asset's state; this says what each row
    holds. An EDR's isolate runs at once; a release waits for an approver unless the settings
    say otherwise (docs/integrations.md#edr-containment, Four eyes)."""
    needs = (
        settings.RMM_CONTAINMENT_RELEASE_NEEDS_APPROVAL
        if action == ContainmentAction.RELEASE
        else settings.RMM_CONTAINMENT_ISOLATE_NEEDS_APPROVAL
    )
    return registry.NewJob(
        fields={"action": action, "reason": reason, "server_endpoints": server_endpoints, "dns": dns},
        requires_approval=bool(needs),
        names={"action": action},
        created={"reason": reason, "server_endpoints": server_endpoints, "dns": dns},
    )


def evidence_document(job: ContainmentJob, inst, stored, result: dict, late: bool) -> dict:
    task = job.psa_task
    return {
        "evidence_type": CONTAINMENT_STATE,
        "job": registry.job_document(job, "containment"),
        "action": job.action,
        "reason": job.reason,
        "server_endpoints": job.server_endpoints,
        "dns": job.dns,
        "step": "change" if inst.step == 0 else "state",
        "state": stored["state"] if stored else None,
        "instruction": registry.signed_instruction(inst),
        "authority": {"psa_task_id": task.pk, "psa_case_id": task.case_id},
        "asset": {"id": job.asset_id, "hostname": job.asset.hostname, "site": job.site.name},
        "result": registry.step_result(inst, result, late),
    }


registry.register(
    registry.JobKind(
        name="containment",
        model=ContainmentJob,
        prepare=prepare,
        render=render,
        judge=judge,
        store_result=services.record_state,
        evidence_recorded=services.state_recorded,
        evidence_type=CONTAINMENT_STATE,
        evidence_entity="containment_job",
        evidence_document=evidence_document,
        describe=lambda job: f"{job.action} {job.asset.hostname}: {job.reason}",
        card=lambda job: [
            ("Action", job.action),
            ("Reason", job.reason),
            ("Still reachable", ", ".join(f"{a} port {p}" for a, p in job.server_endpoints)),
            ("Privileged", "yes: changes the firewall as root"),
        ],
        select_related=("asset", "site", "psa_task__case", "requested_by", "decided_by"),
        api_detail="containment-detail",
        capability=CAPABILITY_STRUCTURED_RESULT,
    )
)
