"""The generic durable saga engine, one concept per module:

    definition   Saga, Step, Action, RetryPolicy, the hooks: a saga declared as data
    state        SagaStatus, StepStatus, the run and its step records, their changes in memory
    schema       the engine's tables and their migrations
    repo         every statement on those tables, views included
    transitions  each transition as a unit of work: state, row, events, hooks
    driver       one run's next step forward or compensation back
    engine       lifecycle, the stop protocol, resuming after a crash
    events       the engine's own events, as models
    replay       rebuilding sagas from events

Import from the modules themselves (`from bus.saga.engine import SagaEngine`): this package imports none,
so that no import of one of them runs through another.
"""
