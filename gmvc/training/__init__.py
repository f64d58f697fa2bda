"""The optimizer, the train step (one per-device body), the chunked loop, parallel layouts,
distributed start, augmentation and phases."""
