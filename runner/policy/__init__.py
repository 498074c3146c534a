"""The policy: its model (``model``), the governance score (``governance``) and the compiler."""
