"""Choosing and producing the answer to a webhook."""
