"""edgeadapt: Kubernetes-native continuous learning for video analytics on edge devices."""

__version__ = "0.1.0"
