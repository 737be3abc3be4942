"""The production layout of deploy/ on one machine (`make prod-up`, `make prod-down`): its certificates,
nginx, units, private stores and processes (docs/operations.md, "Try the layout on one machine")."""
