"""Signed exports in the OpenSSF Model Signing format: a Sigstore bundle holding a DSSE
envelope over an in-toto statement of (file, sha256) pairs, signed with an elliptic-curve
key.  :mod:`.keys` holds the keys, :mod:`.bundle` the format (pure), :mod:`.store` the
signature next to an export in S3 and its check before a load."""
