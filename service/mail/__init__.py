"""Building and sending email: render templates, assemble MIME bytes, hand them over.

Message assembly lives only here, so a faster digest path can replace the
inside without touching callers.
"""
