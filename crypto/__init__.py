"""Keys, signing inputs, strict Ed25519, SHA-256 helpers, canonical JSON and the Merkle tree."""
