"""TorchScript archives (``torch.jit.save``): :mod:`.export` to S3, :mod:`.load` back.

Never imports :mod:`serializer.pt2`.
"""
