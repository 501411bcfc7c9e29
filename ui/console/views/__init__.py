"""Console pages, one module each with `render()`. Not named `pages/`: Streamlit would treat a
`pages/` folder next to the entrypoint as a v1 multipage app on a first visit to a page URL."""
