import streamlit as st

st.title("medimg")
