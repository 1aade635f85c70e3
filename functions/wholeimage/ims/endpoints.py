"""IMS and IAM endpoints from a cloud and a region (docs/ims-api.md §5), or given explicitly."""

from __future__ import annotations

from dataclasses import dataclass

from wholeimage.errors import ConfigurationError

CLOUDS = ("huaweicloud", "otc")

# Open Telekom Cloud regions and their hosts; eu-ch2 (Swiss) lives under sc.otc.t-systems.com
# and its IAM host is iam-pub (docs/ims-api.md §5; the IMS host there is inferred, not documented).
_OTC_REGIONS = {
    "eu-de": ("https://ims.eu-de.otc.t-systems.com", "https://iam.eu-de.otc.t-systems.com"),
    "eu-nl": ("https://ims.eu-nl.otc.t-systems.com", "https://iam.eu-nl.otc.t-systems.com"),
    "eu-ch2": (
        "https://ims.eu-ch2.sc.otc.t-systems.com",
        "https://iam-pub.eu-ch2.sc.otc.t-systems.com",
    ),
}


@dataclass(frozen=True)
class Endpoints:
    """Base URLs, without a trailing slash; IAM's is the host, ``/v3/...`` is added per call."""

    ims: str
    iam: str | None


def _strip(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v3")] if url.endswith("/v3") else url


def resolve_endpoints(
    *,
    cloud: str,
    region: str | None,
    ims_endpoint: str | None = None,
    iam_endpoint: str | None = None,
) -> Endpoints:
    """Pick the IMS and IAM endpoints: explicit ones win, else derive them from cloud and region.

    Raises:
        ConfigurationError: neither an endpoint nor a usable region is configured.
    """
    derived_ims: str | None = None
    derived_iam: str | None = None
    if region:
        if cloud == "otc":
            if region in _OTC_REGIONS:
                derived_ims, derived_iam = _OTC_REGIONS[region]
            elif not ims_endpoint:  # an explicit endpoint wins: then there is nothing to derive
                raise ConfigurationError(
                    f"WHOLEIMAGE_REGION {region!r} is not an Open Telekom Cloud region "
                    f"({', '.join(_OTC_REGIONS)}); set WHOLEIMAGE_IMS_ENDPOINT instead"
                )
        elif cloud == "huaweicloud":
            derived_ims = f"https://ims.{region}.myhuaweicloud.com"
            derived_iam = f"https://iam.{region}.myhuaweicloud.com"
        else:
            raise ConfigurationError(f"WHOLEIMAGE_CLOUD must be one of {', '.join(CLOUDS)}")
    ims = ims_endpoint or derived_ims
    if not ims:
        raise ConfigurationError(
            "IMS endpoint unknown: set WHOLEIMAGE_REGION (with WHOLEIMAGE_CLOUD=huaweicloud|otc) "
            "or WHOLEIMAGE_IMS_ENDPOINT"
        )
    if not ims.startswith(("https://", "http://")):
        raise ConfigurationError("WHOLEIMAGE_IMS_ENDPOINT must be an http(s) URL")
    iam = iam_endpoint or derived_iam
    return Endpoints(ims=_strip(ims), iam=_strip(iam) if iam else None)
