"""Fault and abuse findings (issue 14), each reproduced on loopback with real parts."""
