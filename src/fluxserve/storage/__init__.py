"""Result blobs and the URLs clients fetch them from."""
