"""The manifest stored next to each artifact: the pure model (:mod:`.model`) apart from its
S3 store (:mod:`.store`)."""
