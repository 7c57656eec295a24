"""Archives as zips, whatever their format: the streaming zip index, what an archive holds,
extra-file rules and build-record names, and the spool and fifo upload paths.  No torch.
"""
