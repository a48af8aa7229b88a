"""Primitives every layer shares: paths, the package version, file writes, logging, the
agent's wire format. Standard library only, and cheap to import (the thin client uses it)."""
