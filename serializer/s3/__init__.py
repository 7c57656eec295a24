"""S3 transport: URIs, clients, retries, part sizing, the multipart writer and ranged reads.

Knows no zip and no torch: every layer above builds on it.
"""
