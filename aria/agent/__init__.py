"""The agent: a budgeted tool loop that always ends with a message."""
