"""The negative models: how a bank is built (`build`) and the bank itself (`bank`:
EMA schedule, updates, forward, state)."""
