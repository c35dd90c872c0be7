"""The shared kernel of OMS: contract, transport, storage, events and the saga engine."""

__version__ = "0.1.0"  # the software's; the contract's is `bus.contract.API_VERSION`
