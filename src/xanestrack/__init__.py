"""xanestrack: per-particle registration, chemistry and deformation of TXM-XANES scans."""

__version__ = "0.1.0"
