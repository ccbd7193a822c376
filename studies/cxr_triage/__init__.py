"""Study ``cxr_triage`` (in progress, not registered yet): normal/abnormal chest X-ray triage with
a certified auto-clear bucket, an uncertain bucket read in order of value, a flag bucket, and a
throughput simulation of the reporting queue. Built so far: the policy (``policy.py``), the
label contract and scope rule (``labels.py``), the certificate assembly (``certify.py``), the queue
throughput (``throughput.py``), the decision (``decisions.py``) and the monitoring plan
(``monitoring.py``). Still to come: data landing, the fine-tuned model, the memo, registration."""
