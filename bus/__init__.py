"""The shared kernel of OMS: contract, transport, storage, events and the saga engine."""
