"""`tinydiff visualize app`: an interactive denoising viewer (Streamlit, optional extra `tinydiff[app]`)."""
