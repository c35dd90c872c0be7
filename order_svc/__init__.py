"""The order service: orders, the place-order saga that runs them, and their timelines."""
