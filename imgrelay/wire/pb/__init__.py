"""Generated protobuf modules (see tools/regen-protos); do not edit."""
