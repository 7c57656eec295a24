"""``torch.export`` archives (``.pt2``): :mod:`.export` to S3, :mod:`.check` what a
``.pt2`` may hold before torch reads it, :mod:`.load` back.

Never imports :mod:`serializer.torchscript`.
"""
