"""etcd-config-sidecar: mirror etcd v3 keys into a file, atomically and consistently."""

__version__ = "0.1.0"
