"""The Streamlit helpers of app.py and pages/ (cached store and engine, formatting). Nothing in the
library imports this package."""
