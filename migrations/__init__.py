"""The numbered SQL migrations. A package only so that they ship inside labeval as
labeval.migrations (setup.py maps this directory); labeval.db.migrate reads the .sql files."""
