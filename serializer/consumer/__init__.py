"""The consumer side: compatibility from the manifest, extra files by range reads, loading
an artifact checked against its manifest, and ``exportctl verify``'s checks."""
