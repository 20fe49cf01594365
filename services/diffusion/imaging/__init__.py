"""Pure image operations of the passes (numpy, OpenCV): crop-inpaint-paste geometry, face regions,
overlapping tiles, colour grading and film grain."""
