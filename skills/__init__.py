"""Aria's built-in skills: one module per skill family. Drop a file here (or in ARIA_SKILLS_DIR) to add one."""
