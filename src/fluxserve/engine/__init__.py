"""Workers: claim a job, run the model, store the images, complete the job."""
