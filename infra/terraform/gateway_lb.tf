# The gateway's front door: an internet-facing Application Load Balancer that terminates TLS
# (ACM certificate gateway_certificate_arn) and forwards to the gateway replicas' own listener on
# the head node (gateway_port, args.listen of the gateway in serve_apps/configs/aws-cluster.yaml). Only
# gateway_cidr_blocks reach it; only the load balancer reaches the nodes' gateway port.
# The head registers itself in the target group when it starts (head_setup_commands in
# cluster/aws-gpu.yaml), because the Ray launcher, not Terraform, creates the instance.

resource "aws_security_group" "gateway_lb" {
  name        = "${var.cluster_name}-gateway-lb"
  description = "Gateway load balancer of ${var.cluster_name}: HTTPS from the gateway allowlist"
  vpc_id      = aws_vpc.this.id

  ingress {
    description = "HTTPS to the gateway from the allowlisted clients"
    protocol    = "tcp"
    from_port   = 443
    to_port     = 443
    cidr_blocks = var.gateway_cidr_blocks
  }

  egress {
    description     = "To the gateway listener on the Ray head"
    protocol        = "tcp"
    from_port       = var.gateway_port
    to_port         = var.gateway_port
    security_groups = [aws_security_group.ray_nodes.id]
  }

  tags = { Name = "${var.cluster_name}-gateway-lb" }
}

resource "aws_security_group_rule" "ray_nodes_from_gateway_lb" {
  description              = "The gateway port, from the gateway load balancer only"
  type                     = "ingress"
  security_group_id        = aws_security_group.ray_nodes.id
  protocol                 = "tcp"
  from_port                = var.gateway_port
  to_port                  = var.gateway_port
  source_security_group_id = aws_security_group.gateway_lb.id
}

resource "aws_lb" "gateway" {
  name                       = "${var.cluster_name}-gateway"
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = aws_subnet.public[*].id
  security_groups            = [aws_security_group.gateway_lb.id]
  drop_invalid_header_fields = true
  # A connection may stay silent while a cold model loads: streams send SSE keep-alives every
  # server.stream_keepalive_s (15 s), but a non-streamed answer sends nothing until it is whole,
  # so this exceeds every shipped target's first_token_timeout_s + timeout_s (the 70B route's
  # 660 + 300 s); tests/unit/test_terraform_structure.py checks both against the shipped configs.
  idle_timeout = 1000
  #checkov:skip=CKV_AWS_91:Access logs would need a log bucket per cluster; the gateway's own ledger records every request with its key and route.
  #checkov:skip=CKV_AWS_150:Deletion protection would block `terraform destroy` of a disposable cluster; nothing stateful lives in the load balancer.
  #checkov:skip=CKV2_AWS_28:Ingress is limited to gateway_cidr_blocks and every request needs a gateway key; a WAF is left to deployments that open it wider.
}

resource "aws_lb_target_group" "gateway" {
  name        = "${var.cluster_name}-gateway"
  port        = var.gateway_port
  protocol    = "HTTP"
  target_type = "instance"
  vpc_id      = aws_vpc.this.id
  #checkov:skip=CKV_AWS_378:TLS ends at the load balancer; the hop to the head stays inside the VPC, between two security groups.

  health_check {
    path    = "/healthz"
    matcher = "200"
  }
}

resource "aws_lb_listener" "gateway_https" {
  load_balancer_arn = aws_lb.gateway.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.gateway_certificate_arn

  # Only the gateway's own paths (gateway/app.py's handler table) go to the gateway port. The
  # listener there serves the gateway app alone; the path filter also holds if someone deploys a
  # config with Serve's proxy on that port instead, where an LLM app's route_prefix would answer.
  default_action {
    type = "fixed-response"

    fixed_response {
      content_type = "application/json"
      message_body = "{\"error\":{\"message\":\"unknown path\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"unknown_url\"}}"
      status_code  = "404"
    }
  }
}

resource "aws_lb_listener_rule" "gateway_paths" {
  listener_arn = aws_lb_listener.gateway_https.arn
  priority     = 10

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.gateway.arn
  }

  # 5 values is the most one ALB rule takes; a new top-level gateway path needs a second rule
  condition {
    path_pattern {
      values = ["/v1/*", "/ui", "/metrics", "/openapi.json", "/healthz"]
    }
  }
}

data "aws_iam_policy_document" "gateway_target" {
  statement {
    sid       = "RegisterHeadAsGatewayTarget"
    actions   = ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"]
    resources = [aws_lb_target_group.gateway.arn]
  }
}

resource "aws_iam_role_policy" "ray_head_gateway_target" {
  name   = "gateway-target"
  role   = aws_iam_role.ray_head.id
  policy = data.aws_iam_policy_document.gateway_target.json
}
