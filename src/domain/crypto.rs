//! Aether-compatible decryption and masking of stored API keys.
