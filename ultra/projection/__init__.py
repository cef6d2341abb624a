"""The projection shell: replay the log into master_database.json and results.db, the completion index and projection state, audit."""
