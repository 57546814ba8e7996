"""LTP calibration: build low-rank FFN proxies offline, store them, and measure how well they rank."""

from spts.calibration.calibrate import CalibrationSettings, calibrate, default_sizes
from spts.calibration.fidelity import FidelityReport, fidelity_report
from spts.calibration.proxy_file import LTPProxies, ProxyFileError, ProxyMeta, load_proxies, save_proxies

__all__ = [
    "CalibrationSettings",
    "FidelityReport",
    "LTPProxies",
    "ProxyFileError",
    "ProxyMeta",
    "calibrate",
    "default_sizes",
    "fidelity_report",
    "load_proxies",
    "save_proxies",
]
