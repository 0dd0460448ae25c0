"""The job domain: what a fine-tuning job is, in one place for the API, the reaper and the worker — its
names and storage layout (naming), its states and how it moves between them (states, lifecycle), its
events, notifications and results, which queued job runs next (scheduling), the queue its turns travel
on (queue), and the reaper that finds jobs whose worker was lost."""
