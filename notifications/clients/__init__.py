"""Clients of the external systems the notifications app speaks to."""
