"""The Streamlit console: `app.run()` routes to the views; `data` is its only data access."""
