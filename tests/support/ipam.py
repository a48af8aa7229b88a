"""host-local's store as a user reads it back: which addresses are reserved, for whom."""

from __future__ import annotations

from pathlib import Path


def reservation_files(data_dir: Path, network: str) -> dict[str, str]:
    """Address -> content (container ID, ifname) of ``network``'s reservation files, leaving
    out the store's bookkeeping (its lock, last_reserved_ip.N)."""
    directory = data_dir / network
    if not directory.is_dir():
        return {}
    return {
        p.name: p.read_bytes().decode()
        for p in directory.iterdir()
        if p.is_file() and p.name != "lock" and not p.name.startswith("last_reserved_ip")
    }


def reservation_owners(data_dir: Path, network: str) -> dict[str, str]:
    """Address -> the container ID holding it: the first line of each reservation file (the
    file's lines end in CRLF, as host-local writes them)."""
    files = reservation_files(data_dir, network)
    return {ip: text.split("\r\n")[0].strip() for ip, text in files.items()}
