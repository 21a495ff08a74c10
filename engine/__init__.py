"""The imperative shell: runs workflow definitions durably on PostgreSQL."""
