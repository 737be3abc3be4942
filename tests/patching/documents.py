"""Small, realistic CSAF 2.0 documents, each a fresh dict, modelled on two publishers' structure:
Red Hat's (packages as product versions under architectures, each a component of a product by a
relationship, fixed products scored) and Siemens' as the BSI's tooling publishes it (product names
with a version range affected and a fixed version, a vendor fix on the affected products)."""

from __future__ import annotations

RHSA = "RHSA-2024:2447"
BASEOS = "BaseOS-9.4.0.GA"
OPENSSL_VERSION = "1:3.0.7-27.el9"


def _package(name: str, arch: str) -> dict:
    nevra = f"{name}-{OPENSSL_VERSION}.{arch}"
    return {
        "category": "product_version",
        "name": nevra,
        "product": {
            "name": nevra,
            "product_id": nevra,
            "product_identification_helper": {"purl": f"pkg:rpm/redhat/{name}@3.0.7-27.el9?arch={arch}&epoch=1"},
        },
    }


def _component(nevra: str) -> dict:
    return {
        "category": "default_component_of",
        "full_product_name": {
            "name": f"{nevra} as a component of Red Hat Enterprise Linux BaseOS (v. 9)",
            "product_id": f"{BASEOS}:{nevra}",
        },
        "product_reference": nevra,
        "relates_to_product_reference": BASEOS,
    }


def _cvss(score: float, severity: str, availability: str) -> dict:
    return {
        "attackComplexity": "LOW",
        "attackVector": "NETWORK",
        "availabilityImpact": availability,
        "baseScore": score,
        "baseSeverity": severity,
        "confidentialityImpact": "NONE",
        "integrityImpact": "NONE",
        "privilegesRequired": "NONE",
        "scope": "UNCHANGED",
        "userInteraction": "NONE",
        "vectorString": f"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:{availability[0]}",
        "version": "3.1",
    }


def _meta(*, title: str, tracking_id: str, publisher: dict, severity: str | None, released: str) -> dict:
    meta = {
        "category": "csaf_security_advisory",
        "csaf_version": "2.0",
        "distribution": {"text": "Public", "tlp": {"label": "WHITE", "url": "https://www.first.org/tlp/"}},
        "lang": "en",
        "notes": [{"category": "summary", "text": title, "title": "Topic"}],
        "publisher": publisher,
        "title": title,
        "tracking": {
            "current_release_date": released,
            "generator": {"date": released, "engine": {"name": "test", "version": "1"}},
            "id": tracking_id,
            "initial_release_date": released,
            "revision_history": [{"date": released, "number": "1", "summary": "Initial version"}],
            "status": "final",
            "version": "1",
        },
    }
    if severity:
        meta["aggregate_severity"] = {"namespace": "https://example.com/severity", "text": severity}
    return meta


def redhat() -> dict:
    """An openssl update for RHEL 9: openssl on two architectures and openssl-libs, two CVEs."""
    x86 = [f"openssl-{OPENSSL_VERSION}.x86_64", f"openssl-libs-{OPENSSL_VERSION}.x86_64"]
    arm = f"openssl-{OPENSSL_VERSION}.aarch64"
    fixed_all = [f"{BASEOS}:{nevra}" for nevra in [*x86, arm]]
    libs = [f"{BASEOS}:openssl-libs-{OPENSSL_VERSION}.x86_64"]
    errata = f"https://access.redhat.com/errata/{RHSA}"
    document = _meta(
        title="Red Hat Security Advisory: openssl security update",
        tracking_id=RHSA,
        publisher={
            "category": "vendor",
            "contact_details": "https://access.redhat.com/security/team/contact/",
            "name": "Red Hat Product Security",
            "namespace": "https://www.redhat.com",
        },
        severity="Important",
        released="2024-04-30T09:00:00+00:00",
    )
    document["references"] = [{"category": "self", "summary": errata, "url": errata}]
    return {
        "document": document,
        "product_tree": {
            "branches": [
                {
                    "category": "vendor",
                    "name": "Red Hat",
                    "branches": [
                        {
                            "category": "product_family",
                            "name": "Red Hat Enterprise Linux",
                            "branches": [
                                {
                                    "category": "product_name",
                                    "name": "Red Hat Enterprise Linux BaseOS (v. 9)",
                                    "product": {
                                        "name": "Red Hat Enterprise Linux BaseOS (v. 9)",
                                        "product_id": BASEOS,
                                        "product_identification_helper": {
                                            "cpe": "cpe:/o:redhat:enterprise_linux:9::baseos"
                                        },
                                    },
                                }
                            ],
                        },
                        {
                            "category": "architecture",
                            "name": "x86_64",
                            "branches": [_package("openssl", "x86_64"), _package("openssl-libs", "x86_64")],
                        },
                        {"category": "architecture", "name": "aarch64", "branches": [_package("openssl", "aarch64")]},
                    ],
                }
            ],
            "relationships": [_component(nevra) for nevra in [*x86, arm]],
        },
        "vulnerabilities": [
            {
                "cve": "CVE-2023-5678",
                "cwe": {"id": "CWE-606", "name": "Unchecked Input for Loop Condition"},
                "notes": [{"category": "description", "text": "Slow DH checks.", "title": "Vulnerability description"}],
                "product_status": {"fixed": fixed_all},
                "remediations": [
                    {"category": "vendor_fix", "details": "Apply the errata.", "product_ids": fixed_all, "url": errata}
                ],
                "scores": [{"cvss_v3": _cvss(5.3, "MEDIUM", "LOW"), "products": fixed_all}],
                "title": "openssl: excessively long X9.42 DH keys may be very slow",
            },
            {
                "cve": "CVE-2024-0727",
                "notes": [
                    {"category": "description", "text": "NULL dereference.", "title": "Vulnerability description"}
                ],
                "product_status": {"fixed": libs},
                "remediations": [
                    {"category": "vendor_fix", "details": "Update openssl-libs.", "product_ids": libs, "url": errata}
                ],
                "scores": [{"cvss_v3": _cvss(7.5, "HIGH", "HIGH"), "products": libs}],
                "title": "openssl: denial of service via null dereference",
            },
        ],
    }


SSA = "SSA-711309"


def siemens() -> dict:
    """A firmware advisory: S7-1500 below V3.1.0 affected and V3.1.0 fixed; S7-1200 affected with a
    vendor fix but no fixed version named; only the first vulnerability scored (the
    second takes the aggregate severity, Medium)."""
    fix_url = "https://support.industry.siemens.com/cs/ww/en/view/109478459/"
    document = _meta(
        title="SSA-711309: Denial of Service Vulnerabilities in SIMATIC S7 CPUs",
        tracking_id=SSA,
        publisher={"category": "vendor", "name": "Siemens ProductCERT", "namespace": "https://www.siemens.com"},
        severity="Medium",
        released="2024-02-13T00:00:00Z",
    )
    return {
        "document": document,
        "product_tree": {
            "branches": [
                {
                    "category": "vendor",
                    "name": "Siemens",
                    "branches": [
                        {
                            "category": "product_name",
                            "name": "SIMATIC S7-1500 CPU family",
                            "branches": [
                                {
                                    "category": "product_version_range",
                                    "name": "vers:all/<V3.1.0",
                                    "product": {"name": "SIMATIC S7-1500 CPU family", "product_id": "CSAFPID-0001"},
                                },
                                {
                                    "category": "product_version",
                                    "name": "V3.1.0",
                                    "product": {
                                        "name": "SIMATIC S7-1500 CPU family V3.1.0",
                                        "product_id": "CSAFPID-0002",
                                    },
                                },
                            ],
                        },
                        {
                            "category": "product_name",
                            "name": "SIMATIC S7-1200 CPU family",
                            "branches": [
                                {
                                    "category": "product_version_range",
                                    "name": "vers:all/*",
                                    "product": {"name": "SIMATIC S7-1200 CPU family", "product_id": "CSAFPID-0003"},
                                }
                            ],
                        },
                    ],
                }
            ]
        },
        "vulnerabilities": [
            {
                "cve": "CVE-2023-44374",
                "notes": [{"category": "summary", "text": "Crafted packets stop the CPU.", "title": "Summary"}],
                "product_status": {"known_affected": ["CSAFPID-0001"], "fixed": ["CSAFPID-0002"]},
                "remediations": [
                    {
                        "category": "vendor_fix",
                        "details": "Update to V3.1.0 or later version",
                        "product_ids": ["CSAFPID-0001"],
                        "url": fix_url,
                    }
                ],
                "scores": [{"cvss_v3": _cvss(7.5, "HIGH", "HIGH"), "products": ["CSAFPID-0001"]}],
            },
            {
                "cve": "CVE-2023-44375",
                "notes": [{"category": "summary", "text": "A web server crash.", "title": "Summary"}],
                "product_status": {"known_affected": ["CSAFPID-0003"]},
                "remediations": [
                    {
                        "category": "vendor_fix",
                        "details": "Apply the mitigation bundle of the advisory",
                        "product_ids": ["CSAFPID-0003"],
                        "url": fix_url,
                    }
                ],
            },
        ],
    }
