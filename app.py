"""Entry point (Hugging Face Spaces runs ``python app.py``): ``python app.py [--backbone tiny] [--port 7861]``.

``app`` (the package) is imported first so that ``spaces`` comes before torch on ZeroGPU.
"""
from app.main import main

if __name__ == "__main__":
    main()
